// Escape time: Newton's method on z^3 + a z + b, coloured by basin and convergence speed.
vec2 cmul(vec2 a, vec2 b) { return vec2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
vec2 cdiv(vec2 a, vec2 b) { return vec2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y) / max(dot(b, b), 1e-12); }
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 z = centered(fragCoord) * (1.0 + 2.5 * P0.x) + (P0.zw - 0.5);
    vec2 a = (P2.xy - 0.5) * 2.0;
    vec2 b = vec2(-1.0, 0.0) + (P2.zw - 0.5) * 0.6 + 0.05 * vec2(sin(iTime * 0.2), 0.0);
    float relax = 0.6 + 0.5 * P0.y;
    float n = 0.0;
    for (int i = 0; i < 32; i++) {
        vec2 z2 = cmul(z, z);
        vec2 f = cmul(z2, z) + cmul(a, z) + b;
        vec2 df = 3.0 * z2 + a;
        vec2 step = relax * cdiv(f, df);
        z -= step;
        if (dot(step, step) < 1e-6) break;
        n += 1.0;
    }
    float basin = atan(z.y, z.x) / TAU + 0.5;
    float shade = 0.55 + 0.45 * cos(n * (0.4 + 1.2 * P2.w));
    vec3 col = ramp3(fract(basin * 3.0 * (0.5 + P1.w)), P1) * shade;
    fragColor = vec4(col, 1.0);
}
