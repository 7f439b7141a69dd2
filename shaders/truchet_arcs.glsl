// Truchet tiling: quarter-circle arcs in randomly flipped squares form meandering paths.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = rot(P0.x * 0.8) * centered(fragCoord) * (2.0 + 6.0 * P0.y) + iTime * 0.1;
    ivec2 c = ivec2(floor(p));
    vec2 f = fract(p) - 0.5;
    if (hash(c) < 0.5) f.x = -f.x;
    vec2 a = f - 0.5 * sign(f.x + f.y + 1e-4);
    float d = abs(length(a) - 0.5);
    float w = 0.05 + 0.2 * P0.z;
    float band = smoothstep(w, w - 0.04, d);
    float side = step(0.0, length(a) - 0.5);
    vec3 bg = mix(ramp3(0.15, P1), ramp3(0.4, P1), side * P0.w);
    vec3 col = mix(bg, palette(hash(c + ivec2(3, 7)) * P2.x + length(a), P2, P3), band);
    fragColor = vec4(col, 1.0);
}
