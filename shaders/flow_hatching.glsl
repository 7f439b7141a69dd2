// Flow field: a jittered grid of short strokes aligned with a noise vector field.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (4.0 + 10.0 * P0.x);
    vec3 col = ramp3(0.6 + 0.4 * (0.5 + 0.5 * sin(dot(p, vec2(0.21, 0.13)) + P0.y * TAU)), P1);  // paper with a slow tint
    ivec2 i = ivec2(floor(p));
    for (int y = -1; y <= 1; y++)
    for (int x = -1; x <= 1; x++) {
        ivec2 c = i + ivec2(x, y);
        vec2 centre = vec2(c) + 0.5 + (hash2(c) - 0.5) * 0.6;
        float a = fbm(centre * (0.05 + 0.15 * P0.y) + iTime * 0.02, 2, 0.5) * TAU * 2.0;
        vec2 dir = vec2(cos(a), sin(a));
        vec2 o = p - centre;
        float along = dot(o, dir);
        float across = abs(dot(o, vec2(-dir.y, dir.x)));
        float len = 0.4 + 0.6 * P0.z;
        float d = across + max(abs(along) - len, 0.0);
        float w = 0.04 + 0.1 * P0.w;
        col = mix(col, palette(a * 0.2 + hash(c) * 0.2, P2, P3), smoothstep(w + 0.04, w, d));
    }
    fragColor = vec4(col, 1.0);
}
