// Print: a smooth gradient-and-noise image quantised to few colours with a Bayer matrix.
float bayer(ivec2 p) {
    float v = 0.0, s = 1.0;
    for (int i = 0; i < 3; i++) {
        ivec2 b = p & 1;
        v += s * float((b.x ^ b.y) * 2 + b.y);
        s *= 0.25;
        p >>= 1;
    }
    return v / 4.0 * (64.0 / 63.0);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float g = dot(uv, vec2(cos(P0.x * TAU), sin(P0.x * TAU))) * 0.4 + 0.5;
    g = mix(g, fbm(uv * (1.0 + 3.0 * P0.y) + iTime * 0.05, 4, 0.5), 0.3 + 0.7 * P0.z);
    float levels = 2.0 + floor(4.0 * P0.w);
    int pix = 1 + int(3.0 * P2.x);
    float t = bayer(ivec2(fragCoord) / pix);
    float q = floor(g * levels + t) / levels;
    fragColor = vec4(ramp3(q, P1), 1.0);
}
