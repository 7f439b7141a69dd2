// Polar: layered rose curves r = |cos(k theta)| drawn as filled, outlined petals.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord) * (1.1 + 0.4 * P0.x);
    float r = length(uv);
    float a = atan(uv.y, uv.x) + iTime * 0.05;
    vec3 col = ramp3(0.05 + 0.1 * r, P1);
    for (int i = 0; i < 4; i++) {
        float fi = float(i);
        float k = floor(2.0 + 6.0 * hash(ivec2(i, 3)));
        float scale = 1.0 - fi * (0.15 + 0.08 * P0.y);
        float rose = scale * abs(cos(k * 0.5 * (a + fi * P0.z * 2.0)));
        float d = r - rose;
        vec3 c = palette(fi * 0.25 + P0.w, P2, P3);
        col = mix(col, c, smoothstep(0.02, 0.0, d));
        col = mix(col, c * 0.3, smoothstep(0.02, 0.0, abs(d)) * 0.8);
    }
    fragColor = vec4(col, 1.0);
}
