// Noise: growth rings around a random centre, stretched and perturbed like wood grain.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 c = (P0.xy - 0.5) * 3.0;
    vec2 q = rot(P0.z * PI) * (uv - c);
    q.x *= 0.15 + 0.85 * P0.w;
    float grain = fbm(q * vec2(2.0, 8.0) + iTime * 0.02, 4, 0.5);
    float r = length(q) * (6.0 + 20.0 * P2.x) + grain * (2.0 + 6.0 * P2.y);
    float ring = fract(r);
    ring = smoothstep(0.0, 0.6, ring) * smoothstep(1.0, 0.7, ring);
    float fine = vnoise(q * vec2(4.0, 90.0)) * 0.25;
    vec3 col = ramp3(ring * 0.8 + fine, P1);
    fragColor = vec4(col, 1.0);
}
