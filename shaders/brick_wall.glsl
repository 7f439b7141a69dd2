// Tiling: running-bond bricks with mortar, per-brick tint and surface noise.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y;
    float rows = 3.0 + 10.0 * P0.x;
    float ratio = 1.5 + 2.5 * P0.y;
    vec2 p = rot((P0.z - 0.5) * 0.6) * uv * vec2(rows / ratio, rows) + vec2(iTime * 0.05, 0.0);
    float row = floor(p.y);
    p.x += mod(row, 2.0) * 0.5;
    ivec2 id = ivec2(floor(p));
    vec2 f = fract(p);
    float mortar = 0.03 + 0.08 * P0.w;
    vec2 e = min(f, 1.0 - f) * vec2(ratio, 1.0);
    float m = smoothstep(mortar, mortar + 0.03, min(e.x, e.y));
    vec3 brick = ramp3(0.35 + 0.4 * hash(id), P1) * (0.8 + 0.4 * vnoise(p * vec2(12.0, 24.0)));
    vec3 col = mix(ramp3(0.9, P2) * 0.8, brick, m);
    fragColor = vec4(col, 1.0);
}
