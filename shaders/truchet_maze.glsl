// Truchet tiling: diagonal strokes of random orientation, a maze of corridors.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (3.0 + 10.0 * P0.x) + vec2(iTime * 0.2, 0.0);
    ivec2 c = ivec2(floor(p));
    vec2 f = fract(p);
    if (hash(c) < 0.3 + 0.4 * P0.y) f.x = 1.0 - f.x;
    float d = abs(f.x - f.y) / 1.41421;
    float w = 0.06 + 0.18 * P0.z;
    float line = smoothstep(w + 0.05, w, d);
    vec3 a = ramp3(0.9, P1), b = ramp3(0.1, P1);
    if (P0.w > 0.5) { vec3 t = a; a = b; b = t; }
    vec3 col = mix(b, a, line) * (0.8 + 0.2 * hash(c + ivec2(9, 2)));
    fragColor = vec4(col, 1.0);
}
