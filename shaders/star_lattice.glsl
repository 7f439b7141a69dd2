// Symmetry: interlaced star polygons on a square lattice (geometric tile patterns).
float star(vec2 p, float n, float inner) {
    float a = atan(p.y, p.x);
    float sector = TAU / n;
    a = abs(mod(a, sector) - 0.5 * sector);
    vec2 q = length(p) * vec2(cos(a), sin(a));
    vec2 tip = vec2(0.5, 0.0), valley = inner * vec2(cos(0.5 * sector), sin(0.5 * sector));
    vec2 e = valley - tip;
    return (e.x * (q.y - tip.y) - e.y * (q.x - tip.x)) / length(e);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = rot(P0.x * PI) * centered(fragCoord) * (1.5 + 4.0 * P0.y) + iTime * 0.03;
    vec2 f = fract(p) - 0.5;
    float n = 4.0 + 2.0 * floor(3.0 * P0.z);
    float d1 = star(f, n, 0.2 + 0.25 * P0.w);
    float d2 = star(fract(p + 0.5) - 0.5, n, 0.15 + 0.2 * P2.x);
    float w = 0.02 + 0.04 * P2.y;
    float lines = min(abs(d1), abs(d2));
    vec3 col = d1 > 0.0 ? ramp3(0.8, P1) : (d2 > 0.0 ? ramp3(0.5, P1) : ramp3(0.2, P1));
    col = mix(palette(P2.z, P2, P3) * 0.3, col, smoothstep(w, w + 0.02, lines));
    fragColor = vec4(col, 1.0);
}
