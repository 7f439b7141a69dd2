// Voronoi under a random Minkowski metric (diamond, round or square cells).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (2.5 + 5.0 * P0.x) + iTime * 0.05;
    float e = mix(0.7, 6.0, P0.y * P0.y);
    ivec2 i = ivec2(floor(p));
    vec2 f = fract(p);
    float d1 = 99.0, d2 = 99.0, id = 0.0;
    for (int y = -1; y <= 1; y++)
    for (int x = -1; x <= 1; x++) {
        ivec2 c = i + ivec2(x, y);
        vec2 o = abs(vec2(x, y) + hash2(c) - f);
        float d = pow(pow(o.x, e) + pow(o.y, e), 1.0 / e);
        if (d < d1) { d2 = d1; d1 = d; id = hash(c + ivec2(5, 11)); } else if (d < d2) d2 = d;
    }
    vec3 col = ramp3(id, P1);
    col *= 0.55 + 0.45 * smoothstep(0.0, 0.5, d1 * (1.0 + P0.z));
    col = mix(col * 0.2, col, smoothstep(0.0, 0.03 + 0.08 * P0.w, d2 - d1));
    fragColor = vec4(col, 1.0);
}
