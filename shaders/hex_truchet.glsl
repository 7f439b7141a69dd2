// Truchet on a hexagonal grid: three arcs per hexagon, randomly rotated, woven ribbons on a
// background shaded by the distance to them.
vec4 hexCell(vec2 p) {
    vec2 s = vec2(1.0, 1.7320508);
    vec4 c = floor(vec4(p, p - vec2(0.5, 1.0)) / s.xyxy) + 0.5;
    vec4 h = vec4(p - c.xy * s, p - (c.zw + 0.5) * s);
    return dot(h.xy, h.xy) < dot(h.zw, h.zw) ? vec4(h.xy, c.xy) : vec4(h.zw, c.zw + 0.5);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (2.0 + 5.0 * P0.x) + iTime * 0.05;
    vec4 h = hexCell(p);
    ivec2 id = ivec2(floor(h.zw * 2.0));
    float r = floor(hash(id) * 2.0);
    vec2 q = h.xy * rot(r * PI / 3.0);
    float d = 1e9;
    for (int k = 0; k < 3; k++) {
        float a = float(k) * TAU / 3.0;
        vec2 corner = vec2(cos(a), sin(a)) * 0.57735;
        d = min(d, abs(length(q - corner) - 0.28868));
    }
    float w = 0.08 + 0.12 * P0.y;
    vec3 bg = ramp3(0.1 + 0.2 * P0.z + 1.4 * d, P1);  // shaded by the distance to the ribbons
    vec3 col = mix(bg, palette(hash(id + ivec2(4, 4)) * P0.w + d, P2, P3), smoothstep(w, w - 0.03, d));
    fragColor = vec4(col, 1.0);
}
