// Conformal maps: a checkerboard seen through a random Moebius transformation.
vec2 cmul(vec2 a, vec2 b) { return vec2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
vec2 cdiv(vec2 a, vec2 b) { return vec2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y) / max(dot(b, b), 1e-8); }
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 z = centered(fragCoord) * 1.2;
    vec2 a = vec2(1.0, 0.0), b = (P0.xy - 0.5) * 2.0, c = (P0.zw - 0.5) * 1.5, d = vec2(1.0, 0.0) + 0.1 * vec2(cos(iTime * 0.2), 0.0);
    vec2 w = cdiv(cmul(a, z) + b, cmul(c, z) + d);
    w *= 1.0 + 4.0 * P2.x;
    w = rot(P2.y * PI) * w;
    vec2 g = floor(w);
    float chk = mod(g.x + g.y, 2.0);
    vec2 f = abs(fract(w) - 0.5);
    float edge = smoothstep(0.5, 0.45, max(f.x, f.y));
    vec3 col = mix(ramp3(0.2, P1), ramp3(0.85, P1), chk) * mix(1.0, edge, P2.z);
    col = mix(col, palette(length(w) * 0.05, P2, P3), 0.3 * P2.w);
    fragColor = vec4(col, 1.0);
}
