// Domain warping: iterated sine displacement ("plasma"), a smooth liquid look.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (1.0 + 3.0 * P0.x);
    float t = iTime * 0.3;
    float amp = 0.3 + 0.9 * P0.y;
    for (int i = 1; i < 7; i++) {
        float fi = float(i);
        p += amp / fi * vec2(sin(fi * p.y + t + P2[i % 4] * TAU), cos(fi * p.x - t + P3[i % 4] * TAU));
    }
    float v = 0.5 + 0.5 * sin(p.x + p.y * (0.5 + P0.z));
    fragColor = vec4(palette(v + 0.2 * sin(p.y), P1, P0.wzyx), 1.0);
}
