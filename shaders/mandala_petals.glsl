// Symmetry: concentric rings of petals, each ring with its own count and colour.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord) * (0.8 + 0.6 * P0.x);
    float r = length(uv);
    float a = atan(uv.y, uv.x);
    float rings = 3.0 + floor(6.0 * P0.y);
    float ri = floor(r * rings);
    float fr = fract(r * rings);
    float petals = 4.0 + floor(hash(ri + 17.0) * 12.0) * 2.0;
    float phase = hash(ri + 3.0) * TAU + iTime * 0.1 * (mod(ri, 2.0) * 2.0 - 1.0);
    float shape = abs(cos(a * petals * 0.5 + phase));
    shape = pow(shape, 0.3 + 2.0 * P0.z);
    float petal = smoothstep(0.0, 0.08, shape - fr * (0.6 + 0.4 * P0.w));
    vec3 col = mix(ramp3(hash(ri + 9.0) * 0.5, P1), palette(ri / rings + shape * 0.3, P2, P3), petal);
    col *= smoothstep(0.0, 0.1, fr) * 0.3 + 0.7;
    fragColor = vec4(col, 1.0);
}
