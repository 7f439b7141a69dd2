// Polar: noise sampled in twisted polar coordinates, a swirling vortex.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord) - (P0.zw - 0.5) * 0.6;
    float r = length(uv);
    float a = atan(uv.y, uv.x);
    float twist = (1.0 + 6.0 * P0.x) / (0.2 + r);
    float arms = floor(1.0 + 5.0 * P0.y);
    vec2 q = vec2(cos(a * arms + twist + iTime * 0.2), sin(a * arms + twist)) * (1.0 + 3.0 * r) + r * 3.0;
    float v = fbm(q * 1.5, 4, 0.5);
    vec3 col = ramp3(v * (0.7 + 0.6 * (1.0 - exp(-r * 3.0))), P1);
    fragColor = vec4(col, 1.0);
}
