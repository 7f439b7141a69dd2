// Voronoi: smooth (soft-min) distance to jittered points, contoured into rings.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (2.0 + 5.0 * P0.x);
    ivec2 i = ivec2(floor(p));
    vec2 f = fract(p);
    float k = 4.0 + 28.0 * P0.y;
    float acc = 0.0;
    for (int y = -2; y <= 2; y++)
    for (int x = -2; x <= 2; x++) {
        ivec2 c = i + ivec2(x, y);
        vec2 h = hash2(c);
        vec2 o = vec2(x, y) + 0.5 + 0.45 * sin(iTime * 0.3 + h * TAU) - f;
        acc += exp(-k * length(o));
    }
    float d = -log(acc) / k;
    float rings = 0.5 + 0.5 * cos(d * (10.0 + 40.0 * P0.z));
    vec3 col = mix(palette(d, P1, P2), ramp3(rings, P3), 0.3 + 0.5 * P0.w);
    fragColor = vec4(col, 1.0);
}
