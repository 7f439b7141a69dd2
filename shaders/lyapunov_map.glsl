// Chaos: Lyapunov exponent of the logistic map driven by a random binary sequence.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.xy;
    vec2 lo = vec2(2.5) + 1.2 * P0.xy;
    vec2 r = lo + uv * (0.2 + 0.8 * P0.z) * (4.0 - lo);
    uint seq = pcg(SEED + 11u) | 3u;
    float x = 0.5, lambda = 0.0;
    for (int i = 0; i < 80; i++) {
        float rr = ((seq >> uint(i % 12)) & 1u) == 1u ? r.x : r.y;
        x = rr * x * (1.0 - x);
        if (i >= 20) lambda += log(max(abs(rr * (1.0 - 2.0 * x)), 1e-6));
    }
    lambda /= 60.0;
    vec3 col = lambda < 0.0 ? ramp3(1.0 - exp(lambda * (1.0 + 3.0 * P0.w)), P1)
                            : palette(lambda * 2.0 + iTime * 0.01, P2, P3) * (0.3 + 0.4 * exp(-lambda * 3.0));
    fragColor = vec4(col, 1.0);
}
