// Voronoi: flat-coloured cells with dark borders of random width.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 p = uv * (2.0 + 8.0 * P0.x) + iTime * 0.1;
    vec4 v = voronoi(p, 0.3 + 0.7 * P0.y);
    vec3 col = palette(v.z, P1, P2);
    float edge = smoothstep(0.0, 0.02 + 0.15 * P0.z, v.y - v.x);
    col *= mix(1.0 - P0.w, 1.0, edge);
    fragColor = vec4(col, 1.0);
}
