// Polar: logarithmic spiral arms with a random count, pitch and colour bands.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord) - (P0.zw - 0.5) * 0.8;
    float r = length(uv) + 1e-4;
    float a = atan(uv.y, uv.x);
    float arms = 1.0 + floor(7.0 * P0.x);
    float pitch = 0.5 + 4.0 * P0.y;
    float s = a * arms / TAU + log(r) * pitch - iTime * 0.1;
    float band = fract(s);
    float v = smoothstep(0.0, 0.1, band) * smoothstep(1.0, 0.6 + 0.3 * P2.x, band);
    vec3 col = mix(ramp3(0.1, P1), palette(floor(s) * 0.17 + r * 0.3, P2, P3), v);
    col *= 0.5 + 0.5 * smoothstep(0.0, 0.3, r);
    fragColor = vec4(col, 1.0);
}
