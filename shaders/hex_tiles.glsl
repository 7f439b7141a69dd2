// Tiling: hexagonal tiles with random colours and a bevelled edge.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = rot(P0.x * PI) * centered(fragCoord) * (2.0 + 6.0 * P0.y) + iTime * 0.05;
    vec2 s = vec2(1.0, 1.7320508);
    vec4 c = floor(vec4(p, p - vec2(0.5, 1.0)) / s.xyxy) + 0.5;
    vec4 h = vec4(p - c.xy * s, p - (c.zw + 0.5) * s);
    vec4 cell = dot(h.xy, h.xy) < dot(h.zw, h.zw) ? vec4(h.xy, c.xy) : vec4(h.zw, c.zw + 0.5);
    vec2 q = abs(cell.xy);
    float edge = 0.5 - max(dot(q, normalize(s)), q.x);
    ivec2 id = ivec2(floor(cell.zw * 2.0));
    float v = hash(id);
    vec3 col = ramp3(floor(v * (2.0 + 5.0 * P0.z)) / (2.0 + 5.0 * P0.z), P1);
    float bevel = smoothstep(0.0, 0.05 + 0.15 * P0.w, edge);
    col *= mix(0.3, 1.0, bevel);
    col += (1.0 - bevel) * 0.2 * dot(normalize(cell.xy + 1e-4), vec2(0.7, 0.7));
    fragColor = vec4(col, 1.0);
}
