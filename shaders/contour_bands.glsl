// Noise: a smooth fBm field cut into flat contour bands with dark isolines.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float v = fbm(uv * (1.0 + 3.0 * P0.x) + vec2(iTime * 0.04, 7.0 * P0.y), 5, 0.5);
    float levels = 4.0 + floor(12.0 * P0.z);
    float band = floor(v * levels) / levels;
    float f = fract(v * levels);
    float w = fwidth(v * levels);
    float line = smoothstep(0.0, 1.5 * w + 0.02, min(f, 1.0 - f));
    vec3 col = palette(band * (1.0 + 2.0 * P0.w), P1, P2);
    col *= mix(0.25, 1.0, line);
    fragColor = vec4(col, 1.0);
}
