// Symmetry group p6m: hexagonal lattice with twelve-fold folding of a random motif.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (1.5 + 3.0 * P0.x);
    vec2 s = vec2(1.0, 1.7320508);
    vec4 c = floor(vec4(p, p - vec2(0.5, 1.0)) / s.xyxy) + 0.5;
    vec4 h = vec4(p - c.xy * s, p - (c.zw + 0.5) * s);
    vec2 q = dot(h.xy, h.xy) < dot(h.zw, h.zw) ? h.xy : h.zw;
    float a = atan(q.y, q.x);
    float r = length(q);
    float sector = PI / 6.0;
    a = abs(mod(a, 2.0 * sector) - sector);
    q = r * vec2(cos(a), sin(a)) * (4.0 + 8.0 * P0.y);
    float v = vnoise(q + P0.zw * 30.0 + iTime * 0.1);
    float ring = 0.5 + 0.5 * cos(r * (10.0 + 30.0 * P0.w));
    vec3 col = mix(ramp3(v, P1), palette(ring, P2, P3), 0.3 + 0.4 * P2.w);
    fragColor = vec4(col, 1.0);
}
