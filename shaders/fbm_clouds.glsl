// Noise: layered value noise (fBm) drifting like clouds, coloured by a random ramp.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float scale = 1.5 + 6.0 * P0.x;
    float gain = 0.35 + 0.35 * P0.y;
    vec2 p = rot(P0.z * TAU) * uv * scale + vec2(iTime * 0.3, 0.0);
    float v = fbm(p, 6, gain);
    v = smoothstep(0.15 + 0.3 * P0.w, 0.85, v);
    fragColor = vec4(ramp3(v, P1), 1.0);
}
