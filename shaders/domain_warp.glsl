// Domain warping: fBm evaluated at a point displaced by two nested fBm fields.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 p = uv * (1.0 + 2.5 * P0.x);
    float k = 1.0 + 4.0 * P0.y;
    vec2 q = vec2(fbm(p + vec2(0.0, iTime * 0.1), 4, 0.5), fbm(p + vec2(5.2, 1.3), 4, 0.5));
    vec2 r = vec2(fbm(p + k * q + vec2(1.7, 9.2), 4, 0.5), fbm(p + k * q + vec2(8.3, 2.8) + 0.1 * iTime, 4, 0.5));
    float v = fbm(p + k * r, 4, 0.5);
    vec3 col = ramp3(v * v * (1.5 + P0.z), P1);
    col = mix(col, palette(length(q), P2, P3), 0.5 * P0.w);
    fragColor = vec4(col, 1.0);
}
