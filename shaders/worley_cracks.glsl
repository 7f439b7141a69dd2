// Voronoi/Worley: F2 - F1 distance, a network of cracks over a dried-mud texture.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 p = uv * (2.0 + 6.0 * P0.x) + fbm(uv * 3.0, 3, 0.5) * (0.5 * P0.y) + iTime * 0.05;
    vec4 v = voronoi(p, 0.5 + 0.5 * P0.z);
    float crack = smoothstep(0.0, 0.05 + 0.2 * P0.w, v.y - v.x);
    float shade = 1.0 - 0.6 * v.x;
    vec3 col = ramp3(0.3 + 0.5 * v.z, P1) * shade;
    col = mix(ramp3(0.0, P2) * 0.4, col, crack);
    fragColor = vec4(col, 1.0);
}
