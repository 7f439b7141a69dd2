// Escape time: a filled Julia set with c near the Mandelbrot cardioid (connected sets).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float t = P0.x * TAU;
    vec2 c = 0.5 * vec2(cos(t), sin(t)) - 0.25 * vec2(cos(2.0 * t), sin(2.0 * t));
    c *= 0.97 + 0.06 * P0.y;
    vec2 z = rot(P0.z * TAU + iTime * 0.02) * uv * (1.6 - 1.2 * P0.w);
    float n = 0.0;
    float trap = 1e9;
    for (int i = 0; i < 96; i++) {
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        trap = min(trap, abs(z.x * z.y));
        if (dot(z, z) > 64.0) break;
        n += 1.0;
    }
    float sn = n - log2(max(log2(dot(z, z)), 1e-3));
    vec3 col = n >= 96.0 ? ramp3(clamp(trap * 4.0, 0.0, 1.0), P2) : palette(sn * (0.03 + 0.1 * P2.x), P1, P3);
    fragColor = vec4(col, 1.0);
}
