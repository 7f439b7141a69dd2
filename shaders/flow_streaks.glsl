// Flow field: line-integral convolution, white noise smeared along a smooth vector field.
vec2 field(vec2 p) {
    float a = (fbm(p * (0.5 + P0.x), 2, 0.5) - 0.5) * TAU * (1.0 + 2.0 * P0.y) + P0.z * TAU;
    return vec2(cos(a), sin(a));
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float grain = iResolution.y * (0.25 + 0.5 * P0.w) / 2.0;
    float h = 1.5 / grain;
    float acc = 0.0;
    vec2 pf = uv, pb = uv;
    for (int i = 0; i < 8; i++) {
        pf += h * field(pf + iTime * 0.01);
        pb -= h * field(pb + iTime * 0.01);
        acc += hash(ivec2(floor(pf * grain))) + hash(ivec2(floor(pb * grain)));
    }
    acc /= 16.0;
    float v = clamp((acc - 0.5) * (3.0 + 4.0 * P2.x) + 0.5, 0.0, 1.0);
    vec3 col = mix(ramp3(v, P1), palette(fbm(uv * 2.0, 2, 0.5), P2, P3) * v, 0.4 * P2.y);
    fragColor = vec4(col, 1.0);
}
