// Ray casting: a tunnel (cylinder or square section) with a tiled, shaded wall pattern.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord) + (P0.xy - 0.5) * 0.4;
    float e = mix(2.0, 10.0, P0.z);
    float r = pow(pow(abs(uv.x), e) + pow(abs(uv.y), e), 1.0 / e);
    float a = atan(uv.y, uv.x) / TAU;
    float depth = (0.3 + 0.6 * P0.w) / max(r, 1e-3);
    vec2 tc = vec2(a * floor(4.0 + 12.0 * P2.x), depth + iTime * 0.5);
    ivec2 cell = ivec2(floor(tc));
    vec2 f = fract(tc);
    float tile = smoothstep(0.0, 0.08, min(min(f.x, 1.0 - f.x), min(f.y, 1.0 - f.y)));
    vec3 col = palette(hash(cell) * P2.y + depth * 0.1, P1, P3) * mix(0.3, 1.0, tile);
    col *= clamp(r * (1.5 + P2.z), 0.0, 1.0);
    fragColor = vec4(col, 1.0);
}
