// Tiling: an equilateral triangle grid, each triangle randomly coloured or split again.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = rot(P0.x * PI / 3.0) * centered(fragCoord) * (2.0 + 6.0 * P0.y) + iTime * 0.05;
    vec2 q = vec2(p.x - p.y / 1.7320508, p.y * 2.0 / 1.7320508);
    vec2 i = floor(q);
    vec2 f = fract(q);
    float up = step(1.0, f.x + f.y);
    ivec2 id = ivec2(i) * 2 + ivec2(int(up), 0);
    float d = up > 0.5 ? min(min(1.0 - f.x, 1.0 - f.y), f.x + f.y - 1.0) : min(min(f.x, f.y), 1.0 - f.x - f.y);
    float h = hash(id);
    vec3 col = ramp3(floor(h * (2.0 + 4.0 * P0.z)) / (1.0 + 4.0 * P0.z), P1);
    if (h > 1.0 - 0.5 * P0.w) col = palette(d * 4.0, P2, P3);
    col *= smoothstep(0.0, 0.04 + 0.05 * P2.x, d) * 0.7 + 0.3;
    fragColor = vec4(col, 1.0);
}
