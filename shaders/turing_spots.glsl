// Reaction-diffusion look: band-passed noise (difference of two scales) thresholded
// into spots or labyrinthine stripes, like a Turing pattern at rest.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float s = 3.0 + 8.0 * P0.x;
    vec2 p = uv * s + iTime * 0.02;
    float band = 0.0;
    for (int i = 0; i < 3; i++) {
        vec2 o = vec2(float(i) * 17.3, float(i) * 5.1);
        band += gnoise(p * (1.0 + float(i) * 0.31) + o);
    }
    band -= 0.8 * gnoise(p * 0.35 + 3.0);
    float thr = (P0.y - 0.5) * 1.2;
    float v = smoothstep(thr - 0.08, thr + 0.08, band);
    vec3 col = mix(ramp3(0.15, P1), ramp3(0.85, P1), P0.z > 0.5 ? v : 1.0 - v);
    col *= 0.85 + 0.15 * vnoise(uv * 40.0);
    fragColor = vec4(col, 1.0);
}
