// Textile: a tartan, crossing bands of random widths and colours with a twill texture.
vec3 bands(float x, vec4 q, vec4 r) {
    float f = fract(x);
    float k = floor(f * 6.0);
    float h = u2f(pcg(uint(k) + SEED));
    return palette(h * (0.5 + q.w), q, r);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = rot(floor(P0.x * 2.0) * PI / 4.0) * centered(fragCoord);
    float s = 0.5 + 1.5 * P0.y;
    vec3 a = bands(uv.x * s + iTime * 0.02, P1, P2);
    vec3 b = bands(uv.y * s * (0.8 + 0.4 * P0.z), P1, P2);
    float twill = step(0.5, fract((fragCoord.x + fragCoord.y) / (2.0 + 4.0 * P0.w)));
    vec3 col = mix(a, b, 0.35 + 0.3 * twill) * (0.85 + 0.15 * twill);
    fragColor = vec4(col, 1.0);
}
