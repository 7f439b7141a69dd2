// IFS: a kaleidoscopic iterated function system (fold, rotate, scale, translate) in 2D.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (1.0 + P0.x);
    float scale = 1.3 + 0.6 * P0.y;
    mat2 m = rot(P0.z * TAU + iTime * 0.03);
    vec2 offset = vec2(0.5 + P0.w, 0.3 + P2.x) * 0.8;
    float trap = 1e9, trap2 = 1e9;
    float s = 1.0;
    for (int i = 0; i < 10; i++) {
        p = abs(p);
        if (p.x < p.y) p = p.yx;
        p = m * p * scale - offset * (scale - 1.0);
        s *= scale;
        trap = min(trap, abs(p.y) / s);
        trap2 = min(trap2, length(p) / s);
    }
    float v = clamp(-log(trap + 1e-6) * (0.08 + 0.1 * P2.y), 0.0, 1.0);
    vec3 col = ramp3(v, P1) + palette(log(trap2 + 1e-6) * 0.3, P2, P3) * 0.3 * (0.2 + P2.z);
    fragColor = vec4(col, 1.0);
}
