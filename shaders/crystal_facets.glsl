// Voronoi: faceted crystal, each cell shaded by its own random tilted plane.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (2.0 + 5.0 * P0.x);
    ivec2 i = ivec2(floor(p));
    vec2 f = fract(p);
    float d1 = 9.0, d2 = 9.0;
    ivec2 best = i;
    vec2 bo = vec2(0.0);
    for (int y = -1; y <= 1; y++)
    for (int x = -1; x <= 1; x++) {
        ivec2 c = i + ivec2(x, y);
        vec2 o = vec2(x, y) + hash2(c) - f;
        float d = dot(o, o);
        if (d < d1) { d2 = d1; d1 = d; best = c; bo = o; } else if (d < d2) d2 = d;
    }
    vec3 h = hash3(best + ivec2(13, 7));
    vec2 slope = (h.xy - 0.5) * 2.0;
    float shade = 0.55 + 0.45 * dot(-bo, slope) + 0.1 * sin(iTime * 0.2 + h.z * TAU);
    vec3 col = ramp3(0.3 + 0.6 * h.z * P0.y, P1) * shade;
    col += pow(max(shade - 0.7, 0.0), 2.0) * (2.0 + 4.0 * P0.z);
    col = mix(col * 0.4, col, smoothstep(0.0, 0.05 + 0.1 * P0.w, sqrt(d2) - sqrt(d1)));
    fragColor = vec4(col, 1.0);
}
