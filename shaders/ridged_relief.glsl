// Noise: ridged multifractal height field, lit from a random direction.
float ridged(vec2 p, float sharp) {
    float sum = 0.0, amp = 0.5, prev = 1.0;
    for (int i = 0; i < 4; i++) {
        float n = 1.0 - abs(gnoise(p));
        n = pow(n, 1.0 + 3.0 * sharp);
        sum += amp * n * prev;
        prev = n;
        p = rot(0.7) * p * 2.1 + 3.1;
        amp *= 0.5;
    }
    return sum;
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float scale = 1.0 + 4.0 * P0.x;
    vec2 p = uv * scale + vec2(0.0, iTime * 0.05);
    float e = 2.0 / iResolution.y;
    float h = ridged(p, P0.y);
    float hx = ridged(p + vec2(e * scale, 0.0), P0.y);
    float hy = ridged(p + vec2(0.0, e * scale), P0.y);
    vec3 n = normalize(vec3(h - hx, h - hy, e * scale * (0.5 + 2.0 * P0.z)));
    float a = P0.w * TAU;
    vec3 l = normalize(vec3(cos(a), sin(a), 0.7));
    float diff = clamp(dot(n, l), 0.0, 1.0);
    vec3 col = ramp3(h * 0.9, P1) * (0.25 + 0.85 * diff);
    fragColor = vec4(col, 1.0);
}
