// Escape time: the "burning ship" map (absolute values before squaring), random zoom.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    uv.y = -uv.y;
    vec2 centres[4] = vec2[4](vec2(-0.5, -0.5), vec2(-1.755, -0.03), vec2(-1.62, -0.005), vec2(-0.8, -1.2));
    int k = int(P0.x * 3.999);
    float zoom = k == 0 ? 1.3 : pow(10.0, -0.5 - 1.5 * P0.y);
    vec2 c = centres[k] + (P0.zw - 0.5) * zoom * 0.5 + uv * zoom;
    vec2 z = vec2(0.0);
    float n = 0.0;
    for (int i = 0; i < 128; i++) {
        z = abs(z);
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        if (dot(z, z) > 64.0) break;
        n += 1.0;
    }
    float sn = n - log2(max(log2(dot(z, z)), 1e-3));
    vec3 col = n >= 128.0 ? ramp3(0.0, P2) : palette(sqrt(sn) * (0.2 + 0.6 * P2.x) + iTime * 0.01, P1, P3);
    fragColor = vec4(col, 1.0);
}
