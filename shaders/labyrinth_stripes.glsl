// Reaction-diffusion look: stripes whose orientation follows a slowly varying field,
// meeting in defects like a labyrinthine Turing pattern or a fingerprint.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float freq = 12.0 + 30.0 * P0.x;
    vec2 p = uv * (0.6 + 1.2 * P0.y) + P0.zw * 10.0;
    float phase = 0.0;
    float wsum = 0.0;
    for (int i = 0; i < 4; i++) {
        float a = hash(ivec2(i, 9)) * PI;
        vec2 dir = vec2(cos(a), sin(a));
        float w = pow(vnoise(p * 1.5 + float(i) * 7.0), 4.0);
        phase += w * sin(dot(uv, dir) * freq + hash(ivec2(i, 2)) * TAU + iTime * 0.3);
        wsum += w;
    }
    float v = smoothstep(-0.15, 0.15, phase / max(wsum, 1e-3));
    fragColor = vec4(mix(ramp3(0.1, P1), ramp3(0.9, P1), v), 1.0);
}
