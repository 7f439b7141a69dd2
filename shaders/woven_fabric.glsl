// Tiling: a woven fabric, over-under threads in two colours with shading across each thread.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = rot(P0.x * PI) * centered(fragCoord) * (4.0 + 14.0 * P0.y) + iTime * 0.1;
    ivec2 c = ivec2(floor(p));
    vec2 f = fract(p);
    int over = (c.x + c.y * (1 + int(2.0 * P0.z))) & 1;
    float warp = sin(f.x * PI), weft = sin(f.y * PI);
    float gap = 0.1 + 0.25 * P0.w;
    float wx = smoothstep(0.0, gap, f.x) * smoothstep(1.0, 1.0 - gap, f.x);
    float wy = smoothstep(0.0, gap, f.y) * smoothstep(1.0, 1.0 - gap, f.y);
    vec3 a = ramp3(0.3 + 0.4 * hash(ivec2(c.x, 0)) * P2.x, P1) * (0.5 + 0.5 * warp);
    vec3 b = palette(0.2 + 0.3 * hash(ivec2(0, c.y)) * P2.y, P2, P3) * (0.5 + 0.5 * weft);
    vec3 col = over == 1 ? mix(b * wy, a, wx) : mix(a * wx, b, wy);
    fragColor = vec4(col, 1.0);
}
