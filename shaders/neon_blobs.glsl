// Metaballs without a threshold: glowing additive light blobs on a dark ground.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    int n = 2 + int(6.0 * P0.x);
    vec3 col = ramp3(0.1, P2) * 0.5;
    for (int i = 0; i < 8; i++) {
        if (i >= n) break;
        vec3 h = hash3(ivec2(i, 41));
        vec2 c = (h.xy - 0.5) * 1.8 + 0.2 * vec2(sin(iTime * 0.4 + h.z * 9.0), cos(iTime * 0.3 + h.x * 7.0));
        vec2 d = uv - c;
        d = rot(h.z * TAU) * d;
        d.x *= 1.0 + 3.0 * P0.y * h.y;
        float g = (0.03 + 0.1 * P0.z) / (dot(d, d) + 0.01);
        col += g * palette(h.z + P0.w, P1, P3) * 0.25;
    }
    col = 1.0 - exp(-col * (1.0 + 2.0 * P2.x));
    fragColor = vec4(col, 1.0);
}
