// Tiling: a random quadtree subdivision with flat colours and black borders (Mondrian-like).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.xy;
    vec2 lo = vec2(0.0), hi = vec2(1.0);
    float split = 0.3 + 0.4 * P0.x;
    uint id = SEED + 1u;
    int depth = 0;
    for (int i = 0; i < 6; i++) {
        uint h = pcg(id);
        if (i > 1 && u2f(h) > split + 0.15) break;  // at least 3 levels: no single-cell image
        vec2 mid = mix(lo, hi, 0.3 + 0.4 * vec2(u2f(pcg(h + 1u)), u2f(pcg(h + 2u))));
        ivec2 q = ivec2(step(mid, uv));
        lo = mix(lo, mid, vec2(q));
        hi = mix(mid, hi, vec2(q));
        id = pcg(id * 4u + uint(q.x + 2 * q.y) + 7u);
        depth = i;
    }
    float edge = min(min(uv.x - lo.x, hi.x - uv.x), min(uv.y - lo.y, hi.y - uv.y));
    float w = 0.002 + 0.006 * P0.y;
    float r = u2f(pcg(id + 99u));
    vec3 col = r < 0.55 + 0.3 * P0.z ? ramp3(0.3 + r * 1.2, P2) : palette(r * 3.0, P1, P3);
    col *= 0.85 + 0.15 * sin(iTime + float(depth));
    col = mix(vec3(0.03) + 0.2 * P0.w, col, smoothstep(w, w + 0.003, edge));
    fragColor = vec4(col, 1.0);
}
