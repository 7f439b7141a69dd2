// Symmetry group p4m: a random motif folded into the square cell's eight mirror images.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (1.0 + 3.0 * P0.x) + iTime * 0.03;
    vec2 f = abs(fract(p) - 0.5);
    if (f.y > f.x) f = f.yx;
    vec2 q = f * (3.0 + 6.0 * P0.y);
    float v = gnoise(q + P0.zw * 20.0) * 0.5 + 0.5;
    float v2 = vnoise(q * 2.0 + 9.0);
    float bands = smoothstep(0.45, 0.55, fract(v * (2.0 + 4.0 * P2.x)));
    vec3 col = mix(ramp3(v2, P1), palette(v, P2, P3), bands);
    fragColor = vec4(col, 1.0);
}
