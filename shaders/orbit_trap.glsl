// Escape time: a Julia set (c near the Mandelbrot cardioid's rim, so the set is detailed and
// fills the view) coloured by how close the orbit passes a random circle and by escape time.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 z = centered(fragCoord) * (0.8 + 0.7 * P0.x);
    float a = P0.y * TAU + iTime * 0.01;
    vec2 e1 = vec2(cos(a), sin(a)), e2 = vec2(cos(2.0 * a), sin(2.0 * a));
    vec2 c = (0.5 * e1 - 0.25 * e2) * (0.97 + 0.06 * P0.z);
    vec2 tc = (P2.xy - 0.5) * 1.2;
    float tr = 0.1 + 0.6 * P2.z;
    float trap = 1e9, it = 0.0, n = 0.0;
    for (int i = 0; i < 64; i++) {
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        float d = abs(length(z - tc) - tr);
        if (d < trap) { trap = d; it = float(i); }
        if (dot(z, z) > 100.0) break;
        n += 1.0;
    }
    float v = 1.0 / (1.0 + trap * (3.0 + 12.0 * P0.w));
    vec3 trapped = mix(ramp3(v, P1), palette(it * 0.07 + v, P2, P3), 0.3 + 0.5 * P2.w);
    vec3 escape = palette(n * 0.045 + 0.3 * v, P3, P1);
    fragColor = vec4(mix(escape, trapped, 0.35 + 0.65 * v), 1.0);
}
