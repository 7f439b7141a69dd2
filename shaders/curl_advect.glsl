// Flow: a grid pattern advected backwards along a divergence-free (curl) noise field.
vec2 curl(vec2 p) {
    float e = 0.05;
    float n1 = vnoise(p + vec2(0.0, e)), n2 = vnoise(p - vec2(0.0, e));
    float n3 = vnoise(p + vec2(e, 0.0)), n4 = vnoise(p - vec2(e, 0.0));
    return vec2(n1 - n2, n4 - n3) / (2.0 * e);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 p = uv * (1.0 + 2.0 * P0.x);
    float dt = 0.04 + 0.08 * P0.y;
    for (int i = 0; i < 10; i++) p -= dt * curl(p * (1.0 + P0.z) + iTime * 0.05);
    float f = 1.5 + 5.0 * P0.w;
    vec2 g = abs(fract(p * f) - 0.5);
    float lines = smoothstep(0.05, 0.15, min(g.x, g.y));
    vec3 col = mix(ramp3(0.2, P1), palette(hash(ivec2(floor(p * f))), P2, P3), lines);
    fragColor = vec4(col, 1.0);
}
