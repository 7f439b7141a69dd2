// Interference: rain ripples, expanding rings from random drop points in each cell.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = centered(fragCoord) * (2.0 + 4.0 * P0.x);
    ivec2 i = ivec2(floor(p));
    float h = 0.0;
    for (int y = -1; y <= 1; y++)
    for (int x = -1; x <= 1; x++) {
        ivec2 c = i + ivec2(x, y);
        vec3 r = hash3(c);
        vec2 o = p - (vec2(c) + r.xy);
        float d = length(o);
        float t = fract(iTime * 0.3 + r.z);
        float ring = d - t * (1.0 + P0.y);
        h += sin(ring * (20.0 + 30.0 * P0.z)) * exp(-ring * ring * 30.0) * (1.0 - t);
    }
    vec3 water = ramp3(0.35 + 0.25 * vnoise(p), P1);
    vec3 col = water + h * 0.25 * (0.5 + P0.w) + palette(h * 0.2, P2, P3) * 0.1;
    fragColor = vec4(col, 1.0);
}
