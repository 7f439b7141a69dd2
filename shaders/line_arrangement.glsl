// Geometry: an arrangement of random straight lines; each face coloured by which side
// of every line it lies on.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    int n = 3 + int(9.0 * P0.x);
    uint code = 0u;
    float dmin = 1e9;
    for (int i = 0; i < 12; i++) {
        if (i >= n) break;
        vec3 h = hash3(ivec2(i, 23));
        float a = h.x * PI + 0.02 * iTime * (h.z - 0.5);
        vec2 nrm = vec2(cos(a), sin(a));
        float d = dot(uv, nrm) - (h.y - 0.5) * 1.6;
        if (d > 0.0) code |= 1u << uint(i);
        dmin = min(dmin, abs(d));
    }
    float h = u2f(pcg(code + SEED));
    vec3 col = P0.y > 0.5 ? ramp3(h, P1) : palette(h, P1, P2);
    float w = 0.005 + 0.02 * P0.z;
    col = mix(ramp3(0.0, P3) * P0.w, col, smoothstep(w, w + 0.01, dmin));
    fragColor = vec4(col, 1.0);
}
