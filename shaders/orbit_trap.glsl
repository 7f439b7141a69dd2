// Escape time: Julia iteration coloured by how close the orbit passes a random circle.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 z = centered(fragCoord) * (1.2 + 0.6 * P0.x);
    vec2 c = vec2(-0.8 + 1.1 * P0.y, -0.2 + 0.9 * P0.z) * 0.9;
    c += 0.02 * vec2(cos(iTime * 0.3), sin(iTime * 0.3));
    vec2 tc = (P2.xy - 0.5) * 1.5;
    float tr = 0.1 + 0.6 * P2.z;
    float trap = 1e9, it = 0.0;
    for (int i = 0; i < 64; i++) {
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        float d = abs(length(z - tc) - tr);
        if (d < trap) { trap = d; it = float(i); }
        if (dot(z, z) > 100.0) break;
    }
    float v = exp(-trap * (4.0 + 20.0 * P0.w));
    vec3 col = mix(ramp3(v, P1), palette(it * 0.07, P2, P3), 0.3 * P2.w) * (0.3 + 0.7 * v);
    fragColor = vec4(col, 1.0);
}
