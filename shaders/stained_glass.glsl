// Voronoi: stained glass, bright cells with noisy glass and thick dark leading.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 p = rot(P0.x * PI) * uv * (2.0 + 4.0 * P0.y);
    vec4 v = voronoi(p + 0.05 * iTime, 0.9);
    vec3 glass = hsv2rgb(vec3(fract(v.z * (0.3 + 0.7 * P1.x) + P1.y), 0.5 + 0.5 * P1.z, 0.6 + 0.4 * P1.w));
    glass *= 0.7 + 0.3 * vnoise(p * 8.0 + v.z * 10.0);
    float lead = smoothstep(0.04 + 0.1 * P0.z, 0.08 + 0.12 * P0.z, v.y - v.x);
    vec3 col = mix(vec3(0.05 + 0.1 * P0.w), glass, lead);
    col *= 1.0 - 0.35 * dot(uv, uv) * P2.x;
    fragColor = vec4(col, 1.0);
}
