// IFS: Sierpinski-type folding with a random fold angle, shaded by orbit distance.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (1.0 + 0.8 * P0.x) + vec2(0.0, 0.3);
    float ang = PI / 3.0 + (P0.y - 0.5) * 0.8;
    vec2 n1 = vec2(cos(ang), sin(ang));
    vec2 n2 = vec2(-cos(ang), sin(ang));
    float scale = 2.0;
    float trap = 1e9;
    for (int i = 0; i < 9; i++) {
        p -= 2.0 * min(0.0, dot(p, n1)) * n1;
        p -= 2.0 * min(0.0, dot(p, n2)) * n2;
        p = p * scale - vec2(0.0, 1.0) * (scale - 1.0);
        p = rot(P0.z * 0.6 - 0.3 + 0.01 * iTime) * p;
        trap = min(trap, length(p - (P2.xy - 0.5)));
    }
    float d = length(p) * pow(scale, -9.0);
    float v = smoothstep(0.0, 0.01 + 0.04 * P0.w, d);
    vec3 col = mix(ramp3(0.9 - 0.7 * v, P1), palette(trap * 0.5, P2, P3), 0.35);
    fragColor = vec4(col, 1.0);
}
