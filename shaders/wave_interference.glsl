// Interference: circular waves from several random point sources, summed.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    int n = 2 + int(5.0 * P0.x);
    float k = 8.0 + 40.0 * P0.y;
    float sum = 0.0;
    for (int i = 0; i < 7; i++) {
        if (i >= n) break;
        vec2 s = (hash2(ivec2(i, 77)) - 0.5) * 2.5;
        float d = length(uv - s);
        sum += cos(d * k - iTime * 2.0 + hash(ivec2(i, 5)) * TAU) / (1.0 + d * P0.z * 3.0);
    }
    float v = 0.5 + 0.5 * sum / sqrt(float(n));
    v = P0.w > 0.6 ? smoothstep(0.45, 0.55, v) : v;
    fragColor = vec4(palette(v, P1, P2), 1.0);
}
