// Metaballs: an inverse-square field of moving balls, thresholded with a shaded rim, on a
// background that glows with the field.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    int n = 3 + int(7.0 * P0.x);
    float field = 0.0;
    vec3 tint = vec3(0.0);
    for (int i = 0; i < 10; i++) {
        if (i >= n) break;
        vec3 h = hash3(ivec2(i, 19));
        vec2 c = (h.xy - 0.5) * 1.6 + 0.3 * vec2(sin(iTime * (0.3 + h.z) + h.x * TAU), cos(iTime * (0.2 + h.y) + h.z * TAU));
        float r = 0.1 + 0.25 * h.z * (0.5 + P0.y);
        float f = r * r / (dot(uv - c, uv - c) + 1e-4);
        field += f;
        tint += f * palette(h.z, P1, P2);
    }
    tint /= max(field, 1e-4);
    float thr = 0.6 + 1.2 * P0.z;
    float inside = smoothstep(thr, thr * 1.05, field);
    float rim = smoothstep(thr * 0.6, thr, field) * (1.0 - inside);
    vec3 bg = ramp3(0.1 + 0.2 * P0.w + 0.7 * clamp(field / thr, 0.0, 1.0), P3);  // a halo around the balls
    vec3 col = mix(bg, tint * (0.35 + 0.65 * clamp(field / (4.0 * thr), 0.0, 1.0)), inside) + rim * 0.5 * tint;
    fragColor = vec4(col, 1.0);
}
