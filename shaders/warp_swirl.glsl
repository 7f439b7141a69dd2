// Domain warping: coordinates rotated by an angle that is itself a noise field.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 p = uv * (1.0 + 3.0 * P0.x);
    for (int i = 0; i < 3; i++) {
        float a = (fbm(p * 0.8 + float(i) * 3.7 + iTime * 0.05, 3, 0.5) - 0.5) * (3.0 + 9.0 * P0.y);
        p += (0.2 + 0.4 * P0.z) * vec2(cos(a), sin(a));
    }
    float stripes = 0.5 + 0.5 * sin(p.x * (3.0 + 12.0 * P0.w) + p.y * 2.0);
    vec3 col = mix(ramp3(stripes, P1), palette(fbm(p, 3, 0.5), P2, P3), 0.35);
    fragColor = vec4(col, 1.0);
}
