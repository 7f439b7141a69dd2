// IFS: repeated absolute-value folding and inversion in the unit circle (a fold-and-invert map).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (0.5 + 1.5 * P0.x) + (P0.zw - 0.5);
    vec2 c = vec2(0.3 + 0.6 * P2.x, 0.3 + 0.6 * P2.y) + 0.02 * sin(iTime * 0.2);
    float acc = 0.0, m = 1e9;
    for (int i = 0; i < 14; i++) {
        p = abs(p) / max(dot(p, p), 1e-4) - c;
        float l = length(p);
        acc += exp(-l * (1.0 + 4.0 * P0.y));
        m = min(m, l);
    }
    vec3 col = ramp3(fract(acc * (0.1 + 0.3 * P2.z)), P1);
    col = mix(col, palette(m, P3, P2), 0.3);
    fragColor = vec4(col, 1.0);
}
