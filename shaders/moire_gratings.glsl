// Moire: two line gratings at nearby angles and periods, multiplied, in colours that drift
// across the view.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float a1 = P0.x * PI;
    float a2 = a1 + (P0.y - 0.5) * 0.4 + 0.01 * sin(iTime * 0.2);
    float f1 = 10.0 + 35.0 * P0.z;
    float f2 = f1 * (0.9 + 0.2 * P0.w);
    float g1 = step(0.5, fract(dot(uv, vec2(cos(a1), sin(a1))) * f1 / TAU * 2.0));
    float g2 = step(0.5, fract(dot(uv, vec2(cos(a2), sin(a2))) * f2 / TAU * 2.0));
    float v = P2.x > 0.5 ? g1 * g2 : abs(g1 - g2);
    float g = 0.5 + 0.5 * dot(uv, vec2(cos(P2.y * TAU), sin(P2.y * TAU)));  // a slow colour gradient across the view
    vec3 col = mix(ramp3(0.05 + 0.4 * g, P1), ramp3(0.95 - 0.4 * g, P1), v);
    fragColor = vec4(col, 1.0);
}
