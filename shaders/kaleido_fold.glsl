// Kaleidoscope: N-fold mirror symmetry around the centre applied to a noise texture.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float n = 3.0 + floor(10.0 * P0.x);
    float a = atan(uv.y, uv.x) + iTime * 0.05;
    float r = length(uv);
    float sector = TAU / n;
    a = abs(mod(a, sector) - 0.5 * sector);
    vec2 q = r * vec2(cos(a), sin(a)) * (1.0 + 3.0 * P0.y) + P0.zw * 10.0;
    float v = fbm(q, 4, 0.55);
    float w = fbm(q * 2.0 + 4.0, 3, 0.5);
    vec3 col = mix(ramp3(v, P1), palette(w + r, P2, P3), 0.4);
    fragColor = vec4(col, 1.0);
}
