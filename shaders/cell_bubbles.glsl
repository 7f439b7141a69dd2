// Voronoi: a disc of random radius in every jittered grid cell, shaded like a bubble.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (3.0 + 6.0 * P0.x);
    vec3 col = ramp3(0.05, P2) * (0.6 + 0.4 * fbm(p * 0.5, 3, 0.5));
    ivec2 i = ivec2(floor(p));
    for (int y = -1; y <= 1; y++)
    for (int x = -1; x <= 1; x++) {
        ivec2 c = i + ivec2(x, y);
        vec3 h = hash3(c);
        vec2 centre = vec2(c) + 0.5 + (h.xy - 0.5) * P0.y;
        float r = 0.2 + 0.5 * h.z * (0.4 + 0.6 * P0.z);
        vec2 o = p - centre;
        float d = length(o);
        if (d < r) {
            float z = sqrt(1.0 - (d * d) / (r * r));
            vec3 base = palette(h.x + h.z, P1, P3);
            vec3 c2 = base * (0.35 + 0.65 * z) + pow(max(dot(normalize(vec3(o / r, z)), normalize(vec3(-0.5, 0.5, 0.8))), 0.0), 16.0) * P0.w;
            col = mix(col, c2, smoothstep(r, r - 0.05, d));
        }
    }
    fragColor = vec4(col, 1.0);
}
