// Polar: sun-burst rays of random widths from an off-centre point, with halo rings.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord) - (P0.xy - 0.5) * 1.2;
    float a = atan(uv.y, uv.x) / TAU + 0.5 + iTime * 0.01;
    float r = length(uv);
    float n = 6.0 + floor(40.0 * P0.z);
    float ray = vnoise(vec2(a * n, 0.5)) ;
    ray = smoothstep(0.4, 0.6, ray + 0.3 * (vnoise(vec2(a * n * 3.0, 3.0)) - 0.5));
    float halo = 0.5 + 0.5 * cos(r * (10.0 + 30.0 * P0.w));
    vec3 col = mix(ramp3(0.2 + 0.3 * halo * P2.x, P1), ramp3(0.9, P1), ray * exp(-r * (0.5 + 2.0 * P2.y)));
    col += palette(r, P2, P3) * exp(-r * 4.0) * 0.5;
    fragColor = vec4(col, 1.0);
}
